"""The imports feature below the HTTP edge: the file format's pure parser (parse), a stored
upload and its job message (upload), and storing an upload as it streams (store)."""
