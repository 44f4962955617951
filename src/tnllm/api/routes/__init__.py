"""One APIRouter per resource: jobs, health (+ metrics), compat (the tutorial's POST /)."""
