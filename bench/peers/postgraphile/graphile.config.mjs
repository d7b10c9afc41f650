// PostGraphile v5 as the benchmark's peer (bench/peers/postgraphile/run copies this file
// next to its installed node_modules). Amber preset, no Node interface (Nexes' ids are its
// own), no GraphiQL, no explain: the production shape of the server.
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";
import { makePgService } from "postgraphile/adaptors/pg";

export default {
  extends: [PostGraphileAmberPreset],
  disablePlugins: ["NodePlugin"],
  pgServices: [
    makePgService({
      connectionString: process.env.PEER_DATABASE_URL,
      schemas: [process.env.PEER_SCHEMA],
      poolConfig: { max: Number(process.env.PEER_POOL_SIZE || 20) },
    }),
  ],
  grafserv: { port: Number(process.env.PEER_PORT), host: "127.0.0.1", graphiql: false },
  grafast: { explain: false },
};
