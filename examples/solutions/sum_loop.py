# Never answers: every test runs into the time limit.
while True:
    pass
