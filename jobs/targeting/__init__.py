"""Targeting: nightly batch scoring with the serving champion, and the audience it publishes
(who gets which arm, how that was assigned and with what probability, expected lift), with the
queries that read a published audience back."""
