"""The one name table and what follows from it. The table, declarations only: table.py (rules, normalizations,
layouts), refusals.py (REFUSALS), adapter_methods.py (ADAPTER_METHODS); their types schema.py, predicates.py, ops.py.
What runs it: engine.py; sizes.py (Dims from shapes, both plans); plan.py and export_plan.py (the two directions),
state_plan.py, adapter_plan.py; key_report.py; config.py; adapter_ops.py; docs.py (docs/mapping.md)."""
