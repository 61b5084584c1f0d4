"""The embedded default data: Pythia 8 events through parametric detector responses, written in
the layouts of the real Fuτure (EDM4hep) and JetClass files."""
