"""GraphQL declarations: object types, inputs, enums and scalars. `schema.root` binds
Query and Mutation to the resolvers; this package must not import it."""
