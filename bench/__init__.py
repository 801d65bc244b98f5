"""`make bench`: load scenarios against a freshly started stack; results in bench/results/latest.json."""
