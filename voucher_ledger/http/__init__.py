"""The aiohttp application. A subpackage on purpose: a top-level ``http`` package would shadow
the standard library module that aiohttp imports."""
