def f():
    from gpuperf.report import x
import importlib
importlib.import_module('gpuperf.cli.main')
