"""SimPy processes of the postcopy model, one concern per module."""
