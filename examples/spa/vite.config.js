import { defineConfig } from "vite";

// Served by the API at /app (nexes/http/spa.py), so every asset URL starts there.
export default defineConfig({
  base: "/app/",
  build: { outDir: "dist", emptyOutDir: true },
});
