"""Tokens and tokenizer, trajectory -> sequence plan, packing into token budgets."""
