"""The demo's world: a generator of sends, responses and users with a known true uplift, and
the loop simulation that sends each night's audience as exported and draws its responses from
that truth."""
