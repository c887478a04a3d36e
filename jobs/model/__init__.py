"""The model: the multi-arm T-learner (LightGBM per arm and control) and its MLflow wrapper, the
policy rule that turns uplifts into one arm per customer, the statistics that value a policy
(Qini, AIPW/IPW, customer bootstraps), training, the promotion gate, the registry's aliases and
the MLflow runs that record them."""
