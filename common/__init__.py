"""What every kubesandbox process shares and that belongs to no component: the log pipeline.

A leaf: it imports no other kubesandbox package (import-linter checks it).
"""
