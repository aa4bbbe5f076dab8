"""blog_app: lesson 06's production-shaped FastAPI package (app factory, lifespan, layers, /health)."""
