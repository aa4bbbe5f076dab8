"""Business logic: plain functions over a Session, no HTTP (callable from routers, jobs and tests alike)."""
