_instruments = ("aden-hive >= 1.0.1",)
