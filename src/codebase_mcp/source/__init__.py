"""A repository's sources as the index reads them: which files (discover, decoding,
languages), how a file is cut into chunks (chunk, chunk_rules) and the words full-text
search keeps of a chunk or a query (tokens). Pure: no database, no network; imports only
the plain modules at the top of the package."""
