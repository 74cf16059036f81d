# Reads two integers on one line and prints their sum: passes every test.
a, b = map(int, input().split())
print(a + b)
