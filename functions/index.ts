// Entry point for the Functions host (package.json "main"): importing each module registers its function.
import './catalog.js';
