// The pitr-diff Edge Function: the shared app, served by Supabase's edge runtime (which routes
// /functions/v1/pitr-diff here). It must never hold logic of its own: that lives in shared/.
import { appFromEnv } from "../../../shared/http/app.ts";

Deno.serve(appFromEnv().fetch);
