"""The import file format: parsing CSV and XLSX into orders (pure: no I/O beyond the file)."""
