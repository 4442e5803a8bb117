"""raygrade's Serve deployments (the online application's graph, :mod:`raygrade.app`)."""

#: Seconds between Serve's health checks of the job path's replicas (ingress, JobRegistry,
#: Batcher, Grader). Serve replaces a dead replica only once a check finds it (every 10 s by
#: default) and every job waits meanwhile. Measured with one replica killed: POSTs failed for
#: 10.9 s after an ingress death (3.8 s with this); grading stalled 6.9-7.6 s after a Batcher
#: death (3.5-4.0 s). The check is Serve's probe of the replica: no store or provider work.
HEALTH_CHECK_PERIOD_S = 2.0
