"""The faces of the index: the CLI, the MCP server, the Queen's turn context, the demo.

They read or feed the index; nothing in instrumentation/, the pipeline or index/ imports them.
Faces that need Hive import it when called, never at package import.
"""
