"""The gate before production: policy.py decides; local.py, gitlab.py and jenkins.py gather approvals."""
