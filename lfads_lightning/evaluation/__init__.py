"""Evaluation: NLB metrics, posterior metrics, `lfads evaluate`, figures."""
