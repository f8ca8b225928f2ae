"""The analytic memory model: one small function per term, pure arithmetic on specs."""
