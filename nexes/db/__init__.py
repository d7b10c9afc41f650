"""Everything that talks SQL: connections, migrations, partitions, seed."""
