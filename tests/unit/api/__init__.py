"""The Sandbox API models and the CRD generated from them."""
