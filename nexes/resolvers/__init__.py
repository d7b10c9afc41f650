"""The resolvers behind nexes.schema: connections, lookups, mutations, reports, search."""
