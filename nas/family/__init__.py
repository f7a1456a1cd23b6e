"""After the search: the nested family α chooses (`nas.family.chain`), each member evaluated
with its own batch-norm statistics (`nas.family.recalibrate`), the Pareto front
(`nas.family.pareto`) and the export to what ships (`nas.family.export`, written by `deploy`)."""
