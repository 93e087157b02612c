"""The one name table (rules, layouts, refusals, sizes) and what follows from it: the plan, the config, the key report and
the generated docs/mapping.md."""
