"""Comment dumps onto the queue and scores back out: submit, status, results, and a service client.

Imports neither torch nor keras: a producer runs anywhere Redis is reachable.
"""
