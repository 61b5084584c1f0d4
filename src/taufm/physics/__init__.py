"""Physics definitions shared by the stages (SPEC §3): tau decay products and decay modes."""
