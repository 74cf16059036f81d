# Subtracts instead of adding: right only when b is 0, so it scores a little.
a, b = map(int, input().split())
print(a - b)
