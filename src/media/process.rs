//! Image validation and resizing: pure functions, CPU-bound (call them from `spawn_blocking`).
//!
//! * [`probe`] judges a file by its content only: magic bytes, a real header decode, strict
//!   container bounds (nothing may follow the image, so an HTML-after-JPEG polyglot is refused),
//!   and dimension / pixel-area limits checked *before* any pixel buffer is allocated.
//! * [`render`] decodes once, at the smallest size that still covers every requested output
//!   (JPEG: libjpeg's DCT scaling to 1/2, 1/4 or 1/8; WebP: libwebp's scaler), then resizes each output with
//!   fast_image_resize (SIMD) and encodes it in the input's format: JPEG q85, PNG (fast deflate),
//!   lossy WebP.

use fast_image_resize::{
    FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    images::{Image, ImageRef},
};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Format {
    Jpeg,
    Png,
    Webp,
}

impl Format {
    pub fn mime(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Webp => "image/webp",
        }
    }

    pub fn ext(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::Webp => "webp",
        }
    }

    pub fn from_mime(mime: &str) -> Option<Self> {
        match mime.trim().to_ascii_lowercase().as_str() {
            "image/jpeg" | "image/jpg" | "image/pjpeg" => Some(Format::Jpeg),
            "image/png" => Some(Format::Png),
            "image/webp" => Some(Format::Webp),
            _ => None,
        }
    }
}

/// What uploads may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 5 * 1024 * 1024,
            max_width: 8192,
            max_height: 8192,
            max_pixels: 40_000_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub format: Format,
    /// As displayed: after the EXIF orientation (a phone photo stored sideways is taller than
    /// wide here, as every viewer shows it).
    pub width: u32,
    pub height: u32,
    pub has_alpha: bool,
    /// The EXIF orientation of a JPEG, 1 (as stored) to 8; 1 for other formats.
    pub orientation: u8,
}

impl Probe {
    /// Whether the orientation swaps width and height (5 to 8: a quarter turn).
    fn transposed(&self) -> bool {
        self.orientation >= 5
    }

    /// The size as the pixels are stored.
    fn stored_size(&self) -> (u32, u32) {
        self.stored((self.width, self.height))
    }

    /// A displayed size in stored orientation.
    fn stored(&self, (w, h): (u32, u32)) -> (u32, u32) {
        if self.transposed() { (h, w) } else { (w, h) }
    }
}

/// A JPEG's EXIF orientation (tag 0x0112), 1 when it has none or an unreadable one.
fn exif_orientation(bytes: &[u8]) -> u8 {
    let Ok(exif) = exif::Reader::new().read_from_container(&mut std::io::Cursor::new(bytes)) else {
        return 1;
    };
    exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
        .and_then(|f| f.value.get_uint(0))
        .and_then(|o| u8::try_from(o).ok())
        .filter(|o| (1..=8).contains(o))
        .unwrap_or(1)
}

/// Turns stored pixels into displayed ones for an EXIF orientation: each displayed pixel
/// (x', y') takes the stored pixel the orientation puts there.
fn orient(p: Pixels, orientation: u8) -> Pixels {
    if orientation <= 1 || orientation > 8 {
        return p;
    }
    let (w, h) = (p.width as usize, p.height as usize);
    let n = if p.alpha { 4 } else { 3 };
    let (ow, oh) = if orientation >= 5 { (h, w) } else { (w, h) };
    let mut data = vec![0u8; p.data.len()];
    for y2 in 0..oh {
        for x2 in 0..ow {
            let (x, y) = match orientation {
                2 => (w - 1 - x2, y2),
                3 => (w - 1 - x2, h - 1 - y2),
                4 => (x2, h - 1 - y2),
                5 => (y2, x2),
                6 => (y2, h - 1 - x2),
                7 => (w - 1 - y2, h - 1 - x2),
                _ => (w - 1 - y2, x2),
            };
            let (from, to) = ((y * w + x) * n, (y2 * ow + x2) * n);
            data[to..to + n].copy_from_slice(&p.data[from..from + n]);
        }
    }
    Pixels {
        width: ow as u32,
        height: oh as u32,
        alpha: p.alpha,
        data,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Fill the box exactly, cropping the overflow (centred).
    Cover,
    /// Fit inside the box, keeping the aspect ratio.
    Inside,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SizeSpec {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub fit: Fit,
}

impl SizeSpec {
    pub fn new(name: &str, width: u32, height: u32, fit: Fit) -> Self {
        Self {
            name: name.into(),
            width,
            height,
            fit,
        }
    }

    pub fn thumbnail() -> Self {
        Self::new("thumbnail", 200, 200, Fit::Cover)
    }

    pub fn medium() -> Self {
        Self::new("medium", 600, 600, Fit::Inside)
    }

    /// The output dimensions for a `w`×`h` source. `Inside` never enlarges.
    pub fn output_dims(&self, w: u32, h: u32) -> (u32, u32) {
        match self.fit {
            Fit::Cover => (self.width, self.height),
            Fit::Inside => {
                let r = (self.width as f64 / w as f64)
                    .min(self.height as f64 / h as f64)
                    .min(1.0);
                (
                    ((w as f64 * r).round() as u32).max(1),
                    ((h as f64 * r).round() as u32).max(1),
                )
            }
        }
    }

    /// The smallest source size from which this output is a downscale.
    fn needed(&self, w: u32, h: u32) -> (u32, u32) {
        let r = match self.fit {
            Fit::Cover => (self.width as f64 / w as f64).max(self.height as f64 / h as f64),
            Fit::Inside => (self.width as f64 / w as f64).min(self.height as f64 / h as f64),
        }
        .min(1.0);
        ((w as f64 * r).ceil() as u32, (h as f64 * r).ceil() as u32)
    }
}

#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    pub format: Format,
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
}

fn unsupported(msg: impl Into<String>) -> Error {
    Error::UnsupportedMedia(msg.into())
}

/// Which format the bytes are, by magic number alone.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(Format::Webp)
    } else {
        None
    }
}

fn describe_unknown(bytes: &[u8]) -> &'static str {
    let head = &bytes[..bytes.len().min(256)];
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    if bytes.starts_with(b"GIF8") {
        "GIF is not accepted; upload JPEG, PNG or WebP"
    } else if text.contains("<svg") || text.contains("<?xml") {
        "SVG is not accepted; upload JPEG, PNG or WebP"
    } else if text.contains("<html") || text.contains("<!doctype") || text.contains("<script") {
        "HTML is not an image; upload JPEG, PNG or WebP"
    } else {
        "the file is not a JPEG, PNG or WebP image"
    }
}

/// Where the JPEG's EOI marker ends, walking the segment structure (so markers inside entropy data
/// or thumbnails are not mistaken for the end).
fn jpeg_end(b: &[u8]) -> Option<usize> {
    let mut i = 2;
    loop {
        // Find the next marker.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let m = *b.get(i)?;
        i += 1;
        match m {
            0xD9 => return Some(i),
            0x01 | 0xD0..=0xD7 => continue,
            0xDA => {
                // Start of scan: skip the header, then entropy-coded data up to the next real marker.
                let len = u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize;
                i += len;
                loop {
                    let p = i + b.get(i..)?.iter().position(|&x| x == 0xFF)?;
                    let next = *b.get(p + 1)?;
                    if next == 0x00 || (0xD0..=0xD7).contains(&next) || next == 0xFF {
                        i = p + 1;
                        continue;
                    }
                    i = p;
                    break;
                }
            }
            _ => {
                let len = u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize;
                if len < 2 {
                    return None;
                }
                i += len;
            }
        }
    }
}

/// Where the PNG's IEND chunk ends.
fn png_end(b: &[u8]) -> Option<usize> {
    let mut i = 8;
    loop {
        let len = u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize;
        let kind = b.get(i + 4..i + 8)?;
        let end = i.checked_add(12)?.checked_add(len)?;
        if end > b.len() {
            return None;
        }
        if kind == b"IEND" {
            return Some(end);
        }
        i = end;
    }
}

/// Checks everything about a file that can be checked without decoding its pixels.
pub fn probe(bytes: &[u8], limits: &Limits) -> Result<Probe> {
    if bytes.len() > limits.max_bytes {
        return Err(Error::PayloadTooLarge(format!(
            "the file is {} bytes; the limit is {}",
            bytes.len(),
            limits.max_bytes
        )));
    }
    if bytes.is_empty() {
        return Err(Error::validation("file", "the file is empty"));
    }
    let format = sniff(bytes).ok_or_else(|| unsupported(describe_unknown(bytes)))?;
    let (width, height, has_alpha, end) = match format {
        Format::Jpeg => {
            let mut dec = jpeg_decoder::Decoder::new(bytes);
            dec.read_info()
                .map_err(|e| unsupported(format!("invalid JPEG: {e}")))?;
            let info = dec
                .info()
                .ok_or_else(|| unsupported("invalid JPEG header"))?;
            match info.pixel_format {
                jpeg_decoder::PixelFormat::L16 => {
                    return Err(unsupported("16-bit JPEG is not supported"));
                }
                // Print files: libjpeg gives no RGB for them, and a guessed conversion would
                // show wrong colours. Said as such, not as a corrupt file.
                jpeg_decoder::PixelFormat::CMYK32 => {
                    return Err(unsupported(
                        "CMYK JPEG (a print file) is not supported; save it as RGB (sRGB)",
                    ));
                }
                _ => {}
            }
            let end = jpeg_end(bytes)
                .ok_or_else(|| unsupported("the JPEG is truncated (no end marker)"))?;
            (info.width as u32, info.height as u32, false, end)
        }
        Format::Png => {
            let dec = png::Decoder::new(std::io::Cursor::new(bytes));
            let reader = dec
                .read_info()
                .map_err(|e| unsupported(format!("invalid PNG: {e}")))?;
            let info = reader.info();
            let alpha = matches!(
                info.color_type,
                png::ColorType::Rgba | png::ColorType::GrayscaleAlpha
            ) || info.trns.is_some();
            if info.animation_control.is_some() {
                return Err(unsupported("animated PNG is not supported"));
            }
            let end = png_end(bytes)
                .ok_or_else(|| unsupported("the PNG is truncated (no IEND chunk)"))?;
            (info.width, info.height, alpha, end)
        }
        Format::Webp => {
            let riff = u32::from_le_bytes(bytes[4..8].try_into().expect("length checked by sniff"))
                as usize
                + 8;
            if riff > bytes.len() {
                return Err(unsupported("the WebP is truncated"));
            }
            let f = webp::features(bytes).ok_or_else(|| unsupported("invalid WebP"))?;
            if f.has_animation {
                return Err(unsupported("animated WebP is not supported"));
            }
            (f.width, f.height, f.has_alpha, riff)
        }
    };
    if bytes[end..].iter().any(|&b| b != 0) {
        return Err(unsupported(format!(
            "{} bytes of other data follow the image (a polyglot file); refused",
            bytes.len() - end
        )));
    }
    if width == 0 || height == 0 {
        return Err(unsupported("the image has no pixels"));
    }
    if width > limits.max_width || height > limits.max_height {
        return Err(Error::validation(
            "file",
            format!(
                "the image is {width}x{height}; the limit is {}x{}",
                limits.max_width, limits.max_height
            ),
        ));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(Error::validation(
            "file",
            format!(
                "the image has {} pixels; the limit is {}",
                u64::from(width) * u64::from(height),
                limits.max_pixels
            ),
        ));
    }
    let orientation = if format == Format::Jpeg {
        exif_orientation(&bytes[..end])
    } else {
        1
    };
    let (width, height) = if orientation >= 5 {
        (height, width)
    } else {
        (width, height)
    };
    Ok(Probe {
        format,
        width,
        height,
        has_alpha,
        orientation,
    })
}

/// Decoded pixels: RGB8 or RGBA8.
struct Pixels {
    width: u32,
    height: u32,
    alpha: bool,
    data: Vec<u8>,
}

/// The size to decode at so every output is still a downscale.
fn needed(specs: &[SizeSpec], w: u32, h: u32) -> (u32, u32) {
    specs.iter().fold((1, 1), |(aw, ah), s| {
        let (nw, nh) = s.needed(w, h);
        (aw.max(nw), ah.max(nh))
    })
}

/// libjpeg (mozjpeg's build of libjpeg-turbo) decodes at 1/8, 1/4 or 1/2 scale in the DCT domain;
/// at 1/8 it does not even keep the AC coefficients. Its fatal errors unwind as panics, caught here.
fn decode_jpeg(bytes: &[u8], p: &Probe, need: (u32, u32)) -> Result<Pixels> {
    // The smallest DCT scale (1/8, 1/4, 1/2) with both axes still at least the needed size.
    let num = jpeg_scale(p, need);
    let decoded = std::panic::catch_unwind(|| -> std::io::Result<(u32, u32, Vec<u8>)> {
        let mut d = mozjpeg::Decompress::new_mem(bytes)?;
        d.scale(num as u8);
        let mut started = d.rgb()?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let data = started.read_scanlines::<u8>()?;
        started.finish()?;
        Ok((w, h, data))
    });
    let (w, h, data) = match decoded {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(unsupported(format!("the JPEG cannot be decoded: {e}"))),
        Err(_) => {
            return Err(unsupported(
                "the JPEG cannot be decoded (corrupt or truncated)",
            ));
        }
    };
    if data.len() != (w * h * 3) as usize {
        return Err(unsupported("the JPEG is truncated"));
    }
    Ok(Pixels {
        width: w,
        height: h,
        alpha: false,
        data,
    })
}

/// Decodes into one buffer that already has room for the RGB(A) expansion of grey images, which
/// is done in place: the peak is the decoded RGB(A) pixels, nothing more.
fn decode_png(bytes: &[u8]) -> Result<Pixels> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    dec.set_ignore_text_chunk(true);
    let mut reader = dec
        .read_info()
        .map_err(|e| unsupported(format!("invalid PNG: {e}")))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| unsupported("the PNG is too large"))?;
    let grow = match reader.output_color_type().0 {
        png::ColorType::Grayscale => 3,
        png::ColorType::GrayscaleAlpha => 2,
        _ => 1,
    };
    let mut buf = if grow == 1 {
        vec![0; size]
    } else {
        let mut b = Vec::with_capacity(size * grow);
        b.resize(size, 0);
        b
    };
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| unsupported(format!("the PNG cannot be decoded: {e}")))?;
    buf.truncate(frame.buffer_size());
    let (w, h) = (frame.width, frame.height);
    let alpha = match frame.color_type {
        png::ColorType::Rgb => false,
        png::ColorType::Rgba => true,
        png::ColorType::Grayscale => {
            let n = buf.len();
            buf.resize(n * 3, 0);
            // Back to front, so no grey value is overwritten before it is read.
            for i in (0..n).rev() {
                let l = buf[i];
                buf[i * 3..i * 3 + 3].fill(l);
            }
            false
        }
        png::ColorType::GrayscaleAlpha => {
            let n = buf.len() / 2;
            buf.resize(n * 4, 0);
            for i in (0..n).rev() {
                let (l, a) = (buf[i * 2], buf[i * 2 + 1]);
                buf[i * 4..i * 4 + 4].copy_from_slice(&[l, l, l, a]);
            }
            true
        }
        png::ColorType::Indexed => return Err(unsupported("unexpected indexed PNG output")),
    };
    Ok(Pixels {
        width: w,
        height: h,
        alpha,
        data: buf,
    })
}

/// Drops a fully opaque alpha channel in place (cheaper to resize and encode); otherwise
/// premultiplies the colours by alpha in place, so the resizer needs no premultiplied copy.
fn prepare_alpha(mut p: Pixels) -> Result<Pixels> {
    if !p.alpha {
        return Ok(p);
    }
    if p.data.chunks_exact(4).all(|c| c[3] == 255) {
        let n = p.data.len() / 4;
        let d = &mut p.data;
        for i in 0..n {
            let (s, t) = (i * 4, i * 3);
            d[t] = d[s];
            d[t + 1] = d[s + 1];
            d[t + 2] = d[s + 2];
        }
        p.data.truncate(n * 3);
        p.alpha = false;
        return Ok(p);
    }
    let mut image = Image::from_slice_u8(p.width, p.height, &mut p.data, PixelType::U8x4)
        .map_err(Error::internal)?;
    fast_image_resize::MulDiv::default()
        .multiply_alpha_inplace(&mut image)
        .map_err(Error::internal)?;
    Ok(p)
}

fn resize(src: &Pixels, spec: &SizeSpec, resizer: &mut Resizer) -> Result<Pixels> {
    let pt = if src.alpha {
        PixelType::U8x4
    } else {
        PixelType::U8x3
    };
    let (ow, oh) = spec.output_dims(src.width, src.height);
    let image = ImageRef::new(src.width, src.height, &src.data, pt).map_err(Error::internal)?;
    let mut dst = Image::new(ow, oh, pt);
    // The source is premultiplied already (see `prepare_alpha`).
    let mut opts = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .use_alpha(false);
    if spec.fit == Fit::Cover {
        opts = opts.fit_into_destination(None);
    }
    resizer
        .resize(&image, &mut dst, &opts)
        .map_err(Error::internal)?;
    if src.alpha {
        fast_image_resize::MulDiv::default()
            .divide_alpha_inplace(&mut dst)
            .map_err(Error::internal)?;
    }
    Ok(Pixels {
        width: ow,
        height: oh,
        alpha: src.alpha,
        data: dst.into_vec(),
    })
}

fn encode(p: &Pixels, format: Format, quality: u8) -> Result<Vec<u8>> {
    match format {
        Format::Jpeg => {
            let rgb: std::borrow::Cow<[u8]> = if p.alpha {
                p.data
                    .chunks_exact(4)
                    .flat_map(|c| [c[0], c[1], c[2]])
                    .collect::<Vec<u8>>()
                    .into()
            } else {
                (&p.data[..]).into()
            };
            let mut out = Vec::with_capacity(64 * 1024);
            let mut enc = jpeg_encoder::Encoder::new(&mut out, quality);
            enc.set_optimized_huffman_tables(true);
            enc.encode(
                &rgb,
                p.width as u16,
                p.height as u16,
                jpeg_encoder::ColorType::Rgb,
            )
            .map_err(Error::internal)?;
            Ok(out)
        }
        Format::Png => {
            let mut out = Vec::with_capacity(128 * 1024);
            let mut enc = png::Encoder::new(&mut out, p.width, p.height);
            enc.set_color(if p.alpha {
                png::ColorType::Rgba
            } else {
                png::ColorType::Rgb
            });
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Fast);
            let mut w = enc.write_header().map_err(Error::internal)?;
            w.write_image_data(&p.data).map_err(Error::internal)?;
            w.finish().map_err(Error::internal)?;
            Ok(out)
        }
        Format::Webp => webp::encode(&p.data, p.width, p.height, p.alpha, f32::from(quality)),
    }
}

/// The DCT scale numerator (of 8) libjpeg decodes at for a `need`ed size.
/// `need` is in stored orientation, as the decoder sees the image.
fn jpeg_scale(p: &Probe, need: (u32, u32)) -> u32 {
    let (w, h) = p.stored_size();
    [1u32, 2, 4]
        .into_iter()
        .find(|n| (w * n).div_ceil(8) >= need.0 && (h * n).div_ceil(8) >= need.1)
        .unwrap_or(8)
}

/// The WebP decode size: an integer shrink of the source that still covers `need`.
fn webp_decode_dims(p: &Probe, need: (u32, u32)) -> (u32, u32) {
    let shrink = (p.width / need.0.max(1))
        .min(p.height / need.1.max(1))
        .max(1);
    (p.width.div_ceil(shrink), p.height.div_ceil(shrink))
}

/// An upper bound of the bytes [`render`] allocates at its peak for this image, known from the
/// header alone: the decoded pixels at 8-bit RGB(A) (channel expansion and alpha premultiplication
/// happen in place), the resizer's intermediate and the outputs.
pub fn decode_cost(p: &Probe, specs: &[SizeSpec]) -> u64 {
    let need = needed(specs, p.width, p.height);
    let (dw, dh, per_px) = match p.format {
        Format::Jpeg => {
            let n = jpeg_scale(p, p.stored(need));
            // Turning a photo to its EXIF orientation copies the decoded pixels once.
            let per_px = if p.orientation > 1 { 6 } else { 3 };
            (
                (p.width * n).div_ceil(8),
                (p.height * n).div_ceil(8),
                per_px,
            )
        }
        // At most 8-bit RGBA after normalisation.
        Format::Png => (p.width, p.height, 4),
        Format::Webp => {
            let (w, h) = webp_decode_dims(p, need);
            (w, h, 4)
        }
    };
    let decoded = u64::from(dw) * u64::from(dh) * per_px;
    // The resizer's first pass keeps (output width x source height) pixels per output.
    let outputs: u64 = specs
        .iter()
        .map(|s| {
            let (ow, oh) = s.output_dims(dw, dh);
            u64::from(ow) * u64::from(dh) * 4 + u64::from(ow) * u64::from(oh) * 8
        })
        .sum();
    decoded + outputs + (1 << 20)
}

/// Decodes once and makes every requested size, in the input's format.
pub fn render(bytes: &[u8], p: &Probe, specs: &[SizeSpec], quality: u8) -> Result<Vec<Output>> {
    let need = needed(specs, p.width, p.height);
    let pixels = match p.format {
        // Decoded as stored (the needed size turned to match), then turned as displayed.
        Format::Jpeg => orient(decode_jpeg(bytes, p, p.stored(need))?, p.orientation),
        Format::Png => prepare_alpha(decode_png(bytes)?)?,
        Format::Webp => {
            // libwebp's scaler averages areas: decode straight to an integer shrink of the source.
            let (dw, dh) = webp_decode_dims(p, need);
            let data = webp::decode_scaled(bytes, dw, dh, p.has_alpha)?;
            prepare_alpha(Pixels {
                width: dw,
                height: dh,
                alpha: p.has_alpha,
                data,
            })?
        }
    };
    let mut resizer = Resizer::new();
    specs
        .iter()
        .map(|spec| {
            let out = resize(&pixels, spec, &mut resizer)?;
            Ok(Output {
                name: spec.name.clone(),
                format: p.format,
                width: out.width,
                height: out.height,
                bytes: encode(&out, p.format, quality)?,
            })
        })
        .collect()
}

/// libwebp through libwebp-sys: header features, scaled decoding, lossy encoding.
mod webp {
    use libwebp_sys as w;

    use crate::error::{Error, Result};

    pub struct Features {
        pub width: u32,
        pub height: u32,
        pub has_alpha: bool,
        pub has_animation: bool,
    }

    pub fn features(d: &[u8]) -> Option<Features> {
        // SAFETY: WebPGetFeatures reads at most `d.len()` bytes and writes only `f`.
        let mut f: w::WebPBitstreamFeatures = unsafe { std::mem::zeroed() };
        let ok = unsafe { w::WebPGetFeatures(d.as_ptr(), d.len(), &mut f) }
            == w::VP8StatusCode::VP8_STATUS_OK;
        ok.then(|| Features {
            width: f.width.max(0) as u32,
            height: f.height.max(0) as u32,
            has_alpha: f.has_alpha != 0,
            has_animation: f.has_animation != 0,
        })
    }

    /// Decodes to exactly `ow`×`oh` (RGB or RGBA) with libwebp's built-in rescaler.
    pub fn decode_scaled(d: &[u8], ow: u32, oh: u32, alpha: bool) -> Result<Vec<u8>> {
        let bpp = if alpha { 4 } else { 3 };
        let stride = ow as usize * bpp;
        let mut px = vec![0u8; stride * oh as usize];
        let mut cfg =
            w::WebPDecoderConfig::new().map_err(|_| Error::internal("libwebp ABI mismatch"))?;
        cfg.options.use_scaling = 1;
        cfg.options.scaled_width = ow as i32;
        cfg.options.scaled_height = oh as i32;
        cfg.output.colorspace = if alpha {
            w::WEBP_CSP_MODE::MODE_RGBA
        } else {
            w::WEBP_CSP_MODE::MODE_RGB
        };
        cfg.output.is_external_memory = 1;
        cfg.output.u.RGBA = w::WebPRGBABuffer {
            rgba: px.as_mut_ptr(),
            stride: stride as i32,
            size: px.len(),
        };
        // SAFETY: the output buffer is ours, sized stride×oh, and outlives the call.
        let status = unsafe { w::WebPDecode(d.as_ptr(), d.len(), &mut cfg) };
        unsafe { w::WebPFreeDecBuffer(&mut cfg.output) };
        if status != w::VP8StatusCode::VP8_STATUS_OK {
            return Err(Error::UnsupportedMedia(format!(
                "the WebP cannot be decoded ({status:?})"
            )));
        }
        Ok(px)
    }

    /// Lossy encode at `quality` (sharp's defaults: method 4).
    pub fn encode(px: &[u8], wd: u32, ht: u32, alpha: bool, quality: f32) -> Result<Vec<u8>> {
        // SAFETY: every libwebp object is initialised by its constructor and freed on every path.
        unsafe {
            let mut cfg =
                w::WebPConfig::new_with_preset(w::WebPPreset::WEBP_PRESET_DEFAULT, quality)
                    .map_err(|_| Error::internal("libwebp config"))?;
            cfg.method = 4;
            if w::WebPValidateConfig(&cfg) == 0 {
                return Err(Error::internal("invalid libwebp config"));
            }
            let mut pic = w::WebPPicture::new().map_err(|_| Error::internal("libwebp picture"))?;
            pic.use_argb = 0;
            pic.width = wd as i32;
            pic.height = ht as i32;
            let ok = if alpha {
                w::WebPPictureImportRGBA(&mut pic, px.as_ptr(), (wd * 4) as i32)
            } else {
                w::WebPPictureImportRGB(&mut pic, px.as_ptr(), (wd * 3) as i32)
            };
            if ok == 0 {
                w::WebPPictureFree(&mut pic);
                return Err(Error::internal("libwebp import failed"));
            }
            let mut mw: w::WebPMemoryWriter = std::mem::zeroed();
            w::WebPMemoryWriterInit(&mut mw);
            pic.writer = Some(w::WebPMemoryWrite);
            pic.custom_ptr = &mut mw as *mut _ as *mut std::ffi::c_void;
            let ok = w::WebPEncode(&cfg, &mut pic);
            let err = pic.error_code;
            w::WebPPictureFree(&mut pic);
            let out = if ok != 0 {
                Ok(std::slice::from_raw_parts(mw.mem, mw.size).to_vec())
            } else {
                Err(Error::internal(format!("libwebp encode failed: {err:?}")))
            };
            w::WebPMemoryWriterClear(&mut mw);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(format: Format, w: u32, h: u32) -> Vec<u8> {
        let p = Pixels {
            width: w,
            height: h,
            alpha: false,
            data: (0..w * h)
                .flat_map(|i| [(i % 251) as u8, (i / 7 % 256) as u8, 90])
                .collect(),
        };
        encode(&p, format, 90).unwrap()
    }

    #[test]
    fn each_format_round_trips_with_the_right_sizes() {
        for format in [Format::Jpeg, Format::Png, Format::Webp] {
            let bytes = sample(format, 800, 500);
            let p = probe(&bytes, &Limits::default()).unwrap();
            assert_eq!((p.format, p.width, p.height), (format, 800, 500));
            let out = render(&bytes, &p, &[SizeSpec::thumbnail(), SizeSpec::medium()], 85).unwrap();
            assert_eq!((out[0].width, out[0].height), (200, 200));
            assert_eq!((out[1].width, out[1].height), (600, 375));
            for o in &out {
                let again = probe(&o.bytes, &Limits::default()).unwrap();
                assert_eq!(
                    (again.format, again.width, again.height),
                    (format, o.width, o.height)
                );
            }
        }
    }

    /// A JPEG as a phone stores a portrait photo: the sensor's landscape pixels and an EXIF
    /// orientation saying how to turn them.
    fn jpeg_with_orientation(orientation: u16, w: u16, h: u16, px: &[u8]) -> Vec<u8> {
        let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01".to_vec();
        exif.extend([0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]);
        exif.extend(orientation.to_be_bytes());
        exif.extend([0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut out, 95);
        enc.add_app_segment(1, exif).unwrap();
        enc.encode(px, w, h, jpeg_encoder::ColorType::Rgb).unwrap();
        out
    }

    #[test]
    fn exif_orientation_turns_the_outputs_as_viewers_show_the_photo() {
        // Stored 300x200: left half red, right half blue.
        let (w, h) = (300u16, 200u16);
        let px: Vec<u8> = (0..u32::from(w) * u32::from(h))
            .flat_map(|i| {
                if i % u32::from(w) < u32::from(w) / 2 {
                    [255, 0, 0]
                } else {
                    [0, 0, 255]
                }
            })
            .collect();
        // (orientation, displayed size, colour of the displayed top-left and bottom-right)
        for (o, size, top_left, bottom_right) in [
            (1, (300, 200), "red", "blue"),
            (3, (300, 200), "blue", "red"),
            (6, (200, 300), "red", "blue"),
            (8, (200, 300), "blue", "red"),
        ] {
            let jpeg = jpeg_with_orientation(o, w, h, &px);
            let p = probe(&jpeg, &Limits::default()).unwrap();
            assert_eq!(
                (p.width, p.height, p.orientation),
                (size.0, size.1, o as u8)
            );
            let out = render(&jpeg, &p, &[SizeSpec::new("m", 100, 100, Fit::Inside)], 90).unwrap();
            let (ow, oh) = (out[0].width, out[0].height);
            assert_eq!(ow.max(oh), 100, "orientation {o}");
            assert_eq!(ow > oh, size.0 > size.1, "orientation {o}: {ow}x{oh}");
            let mut d = jpeg_decoder::Decoder::new(&out[0].bytes[..]);
            let rgb = d.decode().unwrap();
            let colour = |x: u32, y: u32| {
                let i = ((y * ow + x) * 3) as usize;
                match (rgb[i], rgb[i + 2]) {
                    (r, b) if r > 200 && b < 60 => "red",
                    (r, b) if b > 200 && r < 60 => "blue",
                    _ => "mixed",
                }
            };
            assert_eq!(colour(2, 2), top_left, "orientation {o}");
            assert_eq!(colour(ow - 3, oh - 3), bottom_right, "orientation {o}");
        }
    }

    #[test]
    fn every_orientation_maps_corners_as_exif_defines() {
        // 3x2 stored, pixels numbered 0..6 (one byte each, repeated to RGB).
        let stored = Pixels {
            width: 3,
            height: 2,
            alpha: false,
            data: (0u8..6).flat_map(|v| [v, v, v]).collect(),
        };
        let shown = |o| {
            let p = orient(
                Pixels {
                    data: stored.data.clone(),
                    ..stored
                },
                o,
            );
            (
                p.width,
                p.height,
                p.data.chunks(3).map(|c| c[0]).collect::<Vec<_>>(),
            )
        };
        // Stored:  0 1 2
        //          3 4 5
        assert_eq!(shown(1), (3, 2, vec![0, 1, 2, 3, 4, 5]));
        assert_eq!(shown(2), (3, 2, vec![2, 1, 0, 5, 4, 3]));
        assert_eq!(shown(3), (3, 2, vec![5, 4, 3, 2, 1, 0]));
        assert_eq!(shown(4), (3, 2, vec![3, 4, 5, 0, 1, 2]));
        assert_eq!(shown(5), (2, 3, vec![0, 3, 1, 4, 2, 5]));
        assert_eq!(shown(6), (2, 3, vec![3, 0, 4, 1, 5, 2]));
        assert_eq!(shown(7), (2, 3, vec![5, 2, 4, 1, 3, 0]));
        assert_eq!(shown(8), (2, 3, vec![2, 5, 1, 4, 0, 3]));
    }

    #[test]
    fn cmyk_jpegs_are_refused_as_unsupported_not_corrupt() {
        let mut cmyk = Vec::new();
        jpeg_encoder::Encoder::new(&mut cmyk, 90)
            .encode(&[0u8; 16 * 16 * 4], 16, 16, jpeg_encoder::ColorType::Cmyk)
            .unwrap();
        match probe(&cmyk, &Limits::default()) {
            Err(Error::UnsupportedMedia(m)) => assert!(m.contains("CMYK"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    fn png_with(color: png::ColorType, w: u32, h: u32, px: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(px).unwrap();
        wr.finish().unwrap();
        out
    }

    fn decoded(bytes: &[u8]) -> (png::ColorType, Vec<u8>) {
        let mut r = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let f = r.next_frame(&mut buf).unwrap();
        buf.truncate(f.buffer_size());
        (f.color_type, buf)
    }

    #[test]
    fn grey_and_alpha_pngs_expand_and_keep_their_colours() {
        let (w, h) = (300, 240);
        let n = (w * h) as usize;
        // Grey 100 -> RGB 100.
        let grey = png_with(png::ColorType::Grayscale, w, h, &vec![100; n]);
        let p = probe(&grey, &Limits::default()).unwrap();
        let out = render(&grey, &p, &[SizeSpec::thumbnail()], 85).unwrap();
        let (ct, px) = decoded(&out[0].bytes);
        assert_eq!(ct, png::ColorType::Rgb);
        assert!(px.iter().all(|&v| v == 100), "grey changed");
        // Grey+alpha (100, 128) -> RGBA (100, 100, 100, 128).
        let ga: Vec<u8> = (0..n).flat_map(|_| [100, 128]).collect();
        let ga = png_with(png::ColorType::GrayscaleAlpha, w, h, &ga);
        let p = probe(&ga, &Limits::default()).unwrap();
        let out = render(&ga, &p, &[SizeSpec::thumbnail()], 85).unwrap();
        let (ct, px) = decoded(&out[0].bytes);
        assert_eq!(ct, png::ColorType::Rgba);
        for c in px.chunks_exact(4) {
            assert!(
                c[..3].iter().all(|&v| v.abs_diff(100) <= 1) && c[3] == 128,
                "{c:?}"
            );
        }
        // Left half transparent black, right half opaque red: resizing premultiplied keeps the
        // red pure (no dark fringe) and the transparent side transparent.
        let rgba: Vec<u8> = (0..n)
            .flat_map(|i| {
                if (i as u32 % w) < w / 2 {
                    [0, 0, 0, 0]
                } else {
                    [255, 0, 0, 255]
                }
            })
            .collect();
        let rgba = png_with(png::ColorType::Rgba, w, h, &rgba);
        let p = probe(&rgba, &Limits::default()).unwrap();
        let out = render(&rgba, &p, &[SizeSpec::new("s", 100, 80, Fit::Inside)], 85).unwrap();
        let (_, px) = decoded(&out[0].bytes);
        for (i, c) in px.chunks_exact(4).enumerate() {
            if c[3] > 0 {
                assert!(c[0] >= 250 && c[1] <= 5 && c[2] <= 5, "pixel {i}: {c:?}");
            }
        }
        assert_eq!(px[3], 0);
        assert_eq!(px[px.len() - 1], 255);
    }

    #[test]
    fn decode_cost_covers_the_decoded_pixels() {
        let p = Probe {
            format: Format::Png,
            width: 8192,
            height: 4882,
            has_alpha: true,
            orientation: 1,
        };
        let cost = decode_cost(&p, &[SizeSpec::thumbnail()]);
        assert!(cost >= 8192 * 4882 * 4, "{cost}");
        assert!(cost < 8192 * 4882 * 5, "{cost}");
        // JPEG decodes DCT-scaled: a 1/8 scale costs about 1/64 of the pixels.
        let j = Probe {
            format: Format::Jpeg,
            ..p
        };
        assert!(decode_cost(&j, &[SizeSpec::thumbnail()]) < 8 << 20);
    }

    #[test]
    fn small_images_are_not_enlarged_by_inside() {
        let bytes = sample(Format::Png, 300, 100);
        let p = probe(&bytes, &Limits::default()).unwrap();
        let out = render(&bytes, &p, &[SizeSpec::medium()], 85).unwrap();
        assert_eq!((out[0].width, out[0].height), (300, 100));
    }

    #[test]
    fn bad_inputs_are_refused_with_a_reason() {
        let jpeg = sample(Format::Jpeg, 64, 64);
        let code = |b: &[u8]| probe(b, &Limits::default()).unwrap_err().code();
        assert_eq!(code(b"GIF89a......"), "UNSUPPORTED_MEDIA");
        assert_eq!(
            code(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>"),
            "UNSUPPORTED_MEDIA"
        );
        let mut polyglot = jpeg.clone();
        polyglot.extend_from_slice(b"<html><script>alert(1)</script></html>");
        let err = probe(&polyglot, &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("polyglot"), "{err}");
        assert_eq!(code(&jpeg[..jpeg.len() / 2]), "UNSUPPORTED_MEDIA");
        let png = sample(Format::Png, 64, 64);
        assert_eq!(code(&png[..png.len() - 20]), "UNSUPPORTED_MEDIA");
        let small = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert_eq!(
            probe(&jpeg, &small).unwrap_err().code(),
            "PAYLOAD_TOO_LARGE"
        );
        let tiny_dims = Limits {
            max_width: 32,
            ..Limits::default()
        };
        assert_eq!(probe(&jpeg, &tiny_dims).unwrap_err().code(), "VALIDATION");
    }

    #[test]
    fn decompression_bombs_are_refused_before_decoding() {
        // A 20000x20000 PNG whose one IDAT chunk is 64 bytes that are not image data at all,
        // framed correctly (CRCs, IEND): a decode would fail on the data, with another message,
        // so only a check of the header refuses it for its size.
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            // CRC-32 (IEEE), as PNG frames its chunks.
            let mut crc = 0xffff_ffffu32;
            for &b in kind.iter().chain(data) {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        (crc >> 1) ^ 0xedb8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&(!crc).to_be_bytes());
        }
        let mut enc_out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&20000u32.to_be_bytes());
        ihdr.extend_from_slice(&20000u32.to_be_bytes());
        // 8-bit grayscale, deflate, no filter method, no interlace.
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        chunk(&mut enc_out, b"IHDR", &ihdr);
        chunk(&mut enc_out, b"IDAT", &[0xa5; 64]);
        chunk(&mut enc_out, b"IEND", &[]);
        let limits = Limits {
            max_bytes: usize::MAX,
            ..Limits::default()
        };
        let err = probe(&enc_out, &limits).unwrap_err();
        assert_eq!(err.code(), "VALIDATION", "{err}");
        assert!(
            err.to_string().contains("20000x20000"),
            "refused for its size: {err}"
        );
    }
}
