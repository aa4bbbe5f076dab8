"""Reference answers, one module per lesson: the build splices them into solutions/, the tests import them."""
