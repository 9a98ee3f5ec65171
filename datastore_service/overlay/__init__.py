"""The learning overlay: recent n-gram counts observed from served outputs, merged with a store's trees."""
