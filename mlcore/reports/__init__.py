"""Reports wing: one HTML toolkit and the pages built with it (run cards, monitoring, drift)."""
