"""The Ray side: the server actor's round loop, client actors or pools of virtual clients, their transfers.

Role: :mod:`.remote` (the actor shell the launcher creates), :mod:`.server` (the round loop: select,
ship bases through the object store, collect and validate, clock, aggregate, evaluate), :mod:`.client`
(a device: its data, the model it holds, local LoRA training), :mod:`.pool` (dedicated actors or pooled
workers per device class; can the cluster host them), :mod:`.transfer` (tensors devices keep across
downloads), :mod:`.rows` (the results schema of a round), :mod:`.checkpoint` (encoding a run's state) and
:mod:`.idle_priority` and :mod:`.cpus` (how many threads a process may use).
May import: every algorithm package (config, data, pruning, bandits, modeling, messages, devices, rounds,
strategies) and Ray. Never the launcher (launch, runner, cli): it is what they start.
"""
