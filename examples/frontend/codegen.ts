// graphql-codegen on the committed schema: `npm run codegen` writes typed documents to src/gql/.
// A schema change that breaks these documents fails `npm run check` (CI runs it when node is present).
import type { CodegenConfig } from "@graphql-codegen/cli";

const config: CodegenConfig = {
  schema: "../../schema.graphql",
  documents: ["src/**/*.ts", "!src/gql/**/*"],
  generates: {
    "src/gql/": {
      preset: "client",
      config: {
        // The server's custom scalars, typed for the browser.
        scalars: { DateTime: "string", JSON: "unknown", Upload: "File" },
        enumsAsTypes: true,
        useTypeImports: true,
      },
    },
  },
  ignoreNoDocuments: false,
};

export default config;
