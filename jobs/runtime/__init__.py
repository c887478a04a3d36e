"""Where the jobs run: the Spark session every step opens (classic, or a Spark Connect server
kept beside the scheduler), the JVM settings they share, the drivers' class-data archive, the
Python worker daemon and the zip shipped to a cluster's executors. Nothing here knows what a
send or a model is."""
