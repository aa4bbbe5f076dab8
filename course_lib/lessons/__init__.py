"""One module per lesson (`lNN_name.py`): the lesson's demo apps, helpers, benchmark rows and graded checkers.

Every module here is imported by the grading registry; a module registers its exercises with
`@exercise(...)` and may define `bench() -> list[BenchRow]` for `python -m course_lib bench`.
"""
