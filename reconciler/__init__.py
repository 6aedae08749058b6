"""The control loop: plan, queue, execute, report. And the doors to it (cli/, later web/).

Knows no SQL dialect and no host command: it reads and writes through `state` and acts through
`drivers`.
"""
