COMMENT ON FUNCTION integrity.grant_access(text) IS
'Grant an application role what the integrity API needs: USAGE on schema integrity, EXECUTE on its functions, SELECT/INSERT/UPDATE on its tables, USAGE on its sequences. Row-level security then scopes tenant rows to integrity.org_id when the session sets it.';
