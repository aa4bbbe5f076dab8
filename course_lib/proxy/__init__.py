"""Served behind a proxy: `docs_behind_proxy.py` here is imported by server processes as a top-level module.

This folder goes on a server's PYTHONPATH (see `course_lib.servers.serve`), so its module loads without importing
the course toolkit; it imports nothing from course_lib."""
