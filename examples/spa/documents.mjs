// The SPA's trusted documents, exactly as it sends them: urql's graphcache adds __typename
// to every selection and urql prints the document again, so the registered text is that
// print, not the source file. `make run` registers dist/documents/*.graphql with
// `nexes documents add`; with NEXES_TRUSTED_DOCUMENTS=on nothing else would run.
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequest, formatDocument, stringifyDocument } from "@urql/core";

const source = new URL("./src/documents/", import.meta.url);
const target = new URL("./dist/documents/", import.meta.url);
mkdirSync(target, { recursive: true });
for (const name of readdirSync(source).filter((n) => n.endsWith(".graphql"))) {
  const request = createRequest(readFileSync(new URL(name, source), "utf8"), {});
  writeFileSync(new URL(name, target), stringifyDocument(formatDocument(request.query)));
}
