// A typed, resuming subscription to Smartbot's event stream, for a React app (or anything with a
// WebSocket). Types come from graphql-codegen on schema.graphql (`npm run codegen`).
//
// Resuming: the client remembers the id of the last event it handled. When the socket drops, or the
// server cuts a slow consumer off with LAGGED, it subscribes again with `after: lastId` and the
// server replays exactly what was missed, with no gap and no duplicate. When the history no longer
// holds `lastId` (HISTORY_EXPIRED), it calls `onReset` so the app can reload its view (for example
// with `recentEvents`) and then continues live.
import { createClient, type Client } from "graphql-ws";
import { print } from "graphql";
import { graphql } from "./gql";
import type { EventsSubscription, EventsSubscriptionVariables, EventType } from "./gql/graphql";

export const EventsDocument = graphql(`
  subscription Events($types: [EventType!], $merchantId: ID, $after: ID) {
    events(types: $types, merchantId: $merchantId, after: $after) {
      id
      type
      merchantId
      occurredAt
      data {
        __typename
        ... on MessageReceivedData { messageId from messageType text }
        ... on MessageSentData { messageId to templateId providerMessageId }
        ... on OrderCreatedData { orderId customerPhone totalAmount currency }
        ... on OrderStatusChangedData { orderId oldStatus newStatus }
        ... on ProductUpdatedData { productId change }
        ... on PaymentReceivedData { orderId amount currency reference method }
        ... on DeliveryStartedData { deliveryId orderId driver }
        ... on DeliveryCompletedData { deliveryId orderId }
        ... on BotConnectedData { reason }
        ... on BotDisconnectedData { reason }
      }
    }
  }
`);

/** One event, fully typed: `data` is a discriminated union on `__typename`. */
export type SmartbotEvent = EventsSubscription["events"];

export interface WatchOptions {
  /** ws://host:4001/graphql */
  url: string;
  /** A JWT (merchant, service or admin). Sent in `connection_init`, never in the URL. */
  token: string;
  types?: EventType[];
  merchantId?: string;
  /** Resume point from an earlier run (the last event id the app stored). */
  after?: string;
  onEvent: (event: SmartbotEvent) => void;
  /** The history no longer holds the resume point: reload the view, then events continue live. */
  onReset?: () => void;
  /** Anything else: authentication, validation, a socket that keeps failing. */
  onError?: (error: unknown) => void;
  /** WebSocket implementation for node (`ws`); browsers use the global one. */
  webSocketImpl?: unknown;
}

/** The error code the server put in `extensions.code`, if any. */
function codeOf(error: unknown): string | undefined {
  const errors = Array.isArray(error) ? error : [error];
  for (const e of errors) {
    const code = (e as { extensions?: { code?: unknown } } | null)?.extensions?.code;
    if (typeof code === "string") return code;
  }
  return undefined;
}

const FATAL = new Set(["UNAUTHENTICATED", "FORBIDDEN", "VALIDATION"]);

/** Streams events until `stop()` is called, resuming with `after` across drops. */
export function watchEvents(opts: WatchOptions): { stop: () => void; lastId: () => string | undefined } {
  let lastId = opts.after;
  let stopped = false;
  let failures = 0;
  // graphql-ws's own retry would resubscribe with the *original* variables (a replay from the
  // start, or a gap); this loop resubscribes with the newest `after` instead.
  const client: Client = createClient({
    url: opts.url,
    connectionParams: { Authorization: `Bearer ${opts.token}` },
    retryAttempts: 0,
    lazy: true,
    ...(opts.webSocketImpl ? { webSocketImpl: opts.webSocketImpl } : {}),
  });

  const run = async () => {
    while (!stopped) {
      const variables: EventsSubscriptionVariables = {
        types: opts.types ?? null,
        merchantId: opts.merchantId ?? null,
        after: lastId ?? null,
      };
      try {
        const events = client.iterate<EventsSubscription, EventsSubscriptionVariables>({
          query: print(EventsDocument),
          variables,
        });
        for await (const result of events) {
          if (result.errors?.length) throw result.errors;
          const event = result.data?.events;
          if (!event) continue;
          failures = 0;
          lastId = event.id;
          opts.onEvent(event);
        }
      } catch (error) {
        const code = codeOf(error);
        if (code === "HISTORY_EXPIRED") {
          lastId = undefined;
          opts.onReset?.();
          continue;
        }
        if (code && FATAL.has(code)) {
          opts.onError?.(error);
          return;
        }
        // LAGGED, a dropped socket, a restarting server: back off, then resume from lastId.
        failures += 1;
        if (code !== "LAGGED") opts.onError?.(error);
        const delay = Math.min(30_000, 250 * 2 ** Math.min(failures, 7)) * (0.5 + Math.random() / 2);
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  };
  void run();
  return {
    stop: () => {
      stopped = true;
      void client.dispose();
    },
    lastId: () => lastId,
  };
}

/** A typed switch over the ten payloads: the compiler checks every branch. */
export function describe(event: SmartbotEvent): string {
  const d = event.data;
  if (!d) return event.type;
  switch (d.__typename) {
    case "OrderCreatedData":
      return `order ${d.orderId}: ${(d.totalAmount / 100).toFixed(2)} ${d.currency} from ${d.customerPhone}`;
    case "OrderStatusChangedData":
      return `order ${d.orderId}: ${d.oldStatus} -> ${d.newStatus}`;
    case "PaymentReceivedData":
      return `payment ${d.reference} for ${d.orderId}: ${d.amount} ${d.currency}`;
    case "MessageReceivedData":
      return `message from ${d.from}: ${d.text ?? d.messageType ?? ""}`;
    case "MessageSentData":
      return `message ${d.messageId} sent to ${d.to}`;
    case "ProductUpdatedData":
      return `product ${d.productId}: ${d.change ?? "updated"}`;
    case "DeliveryStartedData":
      return `delivery ${d.deliveryId} picked up${d.driver ? ` by ${d.driver}` : ""}`;
    case "DeliveryCompletedData":
      return `delivery ${d.deliveryId} completed`;
    case "BotConnectedData":
      return "bot connected";
    case "BotDisconnectedData":
      return `bot disconnected${d.reason ? `: ${d.reason}` : ""}`;
    default: {
      const unreachable: never = d;
      return String(unreachable);
    }
  }
}
