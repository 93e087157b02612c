"""The two directions, step for step the same: open -> apply layouts -> plan (+ key report) -> write -> metadata."""
