"""How a round is decided for every method: its policies, its clock, the learned round-time model, budgets.

Role: :mod:`.policy` (the round policies every method gets alike: the round's budget and fill),
:mod:`.clock` (the run's clock: each task's cost before a round, completion times and the round's end after
it), :mod:`.time_model` (per-device speeds learned from observed rounds; what an arm would take; the round's
unavoidable duration) and :mod:`.budget` (the simulated time dense FedIT needs for N rounds on this
population, which ``training.sim_time_budget_fedit_rounds`` turns into a run's budget).
May import: config, data, devices, messages, modeling. Never Ray or the runtime.
"""
