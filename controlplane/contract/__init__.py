"""The API as a contract: what each route reads and answers, declared beside it
(operations.py), the OpenAPI 3.1 document built from those declarations and the app's own routes
(openapi.py), and Helix's wire types the sessions API answers in (helix_types.py)."""
