"""Text generation behind one interface (`base.Generator`): a local transformers model or a served one."""
